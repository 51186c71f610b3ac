"""A1111's ``/sdapi/v1`` response bodies (and the generation request bodies, which live with the other request
parsers in ``webui/jobs/request/body.py``): field names and defaults as A1111 has them."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..jobs.request.body import Img2ImgRequest, Txt2ImgRequest, _Body  # noqa: F401  (the API's request bodies)


class GenerationResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class ExtrasBaseRequest(_Body):
    """A1111's extras fields (``modules/api/models.py``)."""
    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PngInfoRequest(_Body):
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class TaskProgressResponse(BaseModel):
    id: str
    status: str                  # queued | running | done | failed | cancelled
    queue_position: int
    progress: float
    eta_relative: float | None
    sampling_step: int
    sampling_steps: int
    current_image: str | None = None
    error: str | None = None
    files: list[str] | None = None       # a finished task's saved images, relative to the outputs folder
    infotexts: list[str] | None = None   # their parameters


class ErrorResponse(BaseModel):
    """Every error answer (4xx/5xx): ``detail`` is a message that names the field, or FastAPI's list of field
    errors (a 422 for a body or parameter of the wrong type)."""
    detail: str | list[dict[str, Any]]
