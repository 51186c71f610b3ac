"""Entry point: `python app.py` serves the web UI; `python app.py txt2img|img2img ...` runs headless."""
import sys

from webui.cli import main

if __name__ == "__main__":
    sys.exit(main())
