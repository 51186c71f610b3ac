"""The discrete DDPM noise schedule (sigma <-> timestep) and the sigma schedules of A1111's "Schedule type".

Numerics follow the references exactly: ``DiscreteSchedule`` is k-diffusion's ``DiscreteSchedule`` as used by
``CompVisDenoiser`` (float32 sigmas, piecewise-linear interpolation of the timestep in log sigma), and each
schedule function reproduces the function A1111 (``modules/sd_schedulers.py``) calls for that schedule type,
op for op, in float32 on the CPU.

Every schedule function takes the model's ``DiscreteSchedule`` (A1111 reads ``sigma_min``/``sigma_max`` from
the model wrapper with ``.item()``) and the number of steps ``n``, and returns a 1-D float32 CPU tensor of
``n + 1`` sigmas ending in 0 -- except where A1111's own function does otherwise (``kl_optimal`` ends at
``sigma_min``; ``ddim`` has ``len(range(1, 1000, 1000 // n)) + 1`` entries), which is documented there.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "sd_alphas_cumprod", "zero_terminal_snr", "DiscreteSchedule", "LCM_ORIGINAL_STEPS", "uniform", "karras", "exponential", "polyexponential",
    "sgm_uniform", "normal", "simple", "ddim", "kl_optimal", "align_your_steps", "SCHEDULE_FUNCTIONS",
]


def sd_alphas_cumprod(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" DDPM schedule, as LDM registers it.

    betas = linspace(sqrt(beta_start), sqrt(beta_end), n) ** 2 and the cumulative product of (1 - beta)
    are computed in float64; the result is float32 (LDM's ``register_buffer(..., dtype=float32)``).
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


# A1111's (and ComfyUI's) stand-in for alphas_cumprod[-1] = 0, which would make sigma_max infinite
ZERO_SNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The schedule rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Algorithm 1, on sqrt(alphas_cumprod)), as A1111 applies it to ``ztsnr``
    v-prediction models: shift so the last value is 0, scale so the first is unchanged; the last entry is
    then set to a tiny positive value so that sigma_max stays finite (about 4519)."""
    root = alphas_cumprod.to(torch.float32).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root ** 2
    out[-1] = ZERO_SNR_LAST_ALPHA_CUMPROD
    return out.to(torch.float32)


LCM_ORIGINAL_STEPS = 50   # the timesteps LCM models were distilled on (A1111's "LCM Original Timesteps")


class DiscreteSchedule:
    """Mapping between continuous noise levels and the model's discrete timesteps.

    ``sigmas[t] = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`` (float32, increasing in ``t``).
    ``sigma_to_t`` interpolates linearly in log sigma between the neighbouring integer timesteps (clamped
    to ``[0, len - 1]``), ``t_to_sigma`` is its inverse -- exactly k-diffusion's ``DiscreteSchedule`` with
    ``quantize=False`` (``quantize=True``, A1111's "enable_quantization", rounds to the nearest timestep).

    ``sigma_min`` / ``sigma_max`` are python floats (A1111 reads them with ``.item()``). The tables live on
    the device given to ``to()`` and are mirrored on the device of the argument when it differs (the
    schedule functions below always work on CPU copies).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, *, quantize: bool = False, device=None):
        acp = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float32)
        if acp.ndim != 1 or acp.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least 2 entries")
        sigmas = ((1 - acp) / acp) ** 0.5
        self.alphas_cumprod = acp
        self.quantize = quantize
        self._tables = {torch.device("cpu"): (sigmas, sigmas.log())}
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])
        self.device = torch.device("cpu")
        if device is not None:
            self._move(torch.device(device))

    @classmethod
    def sd(cls, **kwargs) -> "DiscreteSchedule":
        """The schedule of SD 1.x / 2.x / SDXL (scaled linear, 1000 steps)."""
        return cls(sd_alphas_cumprod(), **kwargs)

    def every(self, stride: int) -> "DiscreteSchedule":
        """The sub-schedule of every ``stride``-th timestep ending at the last one (``len - 1 - k * stride``,
        in increasing order): LCM's 50 "original" timesteps (A1111's ``LCMCompVisDenoiser`` table) for
        stride 20 of 1000. Index ``i`` of it is the model's timestep ``i * stride + stride - 1``."""
        acp = self.alphas_cumprod
        picked = torch.stack([acp[len(acp) - 1 - k * stride] for k in range(len(acp) // stride)]).flip(0)
        return DiscreteSchedule(picked, quantize=True, device=self.device)

    def _move(self, device: torch.device) -> None:
        self.device = device
        self._table(device)

    def _table(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        table = self._tables.get(device)
        if table is None:
            sigmas, log_sigmas = self._tables[torch.device("cpu")]
            table = (sigmas.to(device), log_sigmas.to(device))
            self._tables[device] = table
        return table

    def to(self, device) -> "DiscreteSchedule":
        """A schedule whose ``sigmas`` / ``log_sigmas`` live on ``device`` (shares the CPU tables)."""
        other = object.__new__(DiscreteSchedule)
        other.__dict__.update(self.__dict__)
        other._tables = dict(self._tables)
        other._move(torch.device(device))
        return other

    @property
    def sigmas(self) -> torch.Tensor:
        return self._table(self.device)[0]

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self._table(self.device)[1]

    def __len__(self) -> int:
        return self._tables[torch.device("cpu")][0].shape[0]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Fractional timestep of ``sigma`` (any shape), float32 on ``sigma``'s device."""
        quantize = self.quantize if quantize is None else quantize
        sigma = torch.as_tensor(sigma)
        log_sigmas = self._table(sigma.device)[1]
        log_sigma = sigma.log()
        if quantize:
            dists = log_sigma.reshape(-1) - log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape)
        # low = last index with log_sigmas[low] <= log_sigma, clamped to [0, len - 2] (k-diffusion's
        # cumsum/argmax search, done with a binary search).
        flat = log_sigma.reshape(-1)
        dtype = torch.promote_types(flat.dtype, log_sigmas.dtype)
        low_idx = torch.searchsorted(log_sigmas.to(dtype), flat.to(dtype), right=True) - 1
        low_idx = low_idx.clamp(0, log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - flat) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at fractional timestep ``t`` (log-linear between the integer neighbours)."""
        t = torch.as_tensor(t).float()
        log_sigmas = self._table(t.device)[1]
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp()


# --------------------------------------------------------------------------------------------------------
# Schedule functions. All run on the CPU in float32 as A1111 does (its sigmas are built on the CPU and
# then moved to the device).

def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _bounds(schedule: DiscreteSchedule, sigma_min, sigma_max) -> tuple[float, float]:
    return (schedule.sigma_min if sigma_min is None else float(sigma_min),
            schedule.sigma_max if sigma_max is None else float(sigma_max))


def uniform(schedule: DiscreteSchedule, n: int) -> torch.Tensor:
    """A1111 "Uniform" (and "Automatic" for Euler, Euler a, LMS, Heun): k-diffusion's ``get_sigmas(n)``.

    ``n`` timesteps evenly spaced from ``len - 1`` (999) down to 0, mapped to sigma, then 0 appended.
    """
    t = torch.linspace(len(schedule) - 1, 0, n)
    return _append_zero(schedule.t_to_sigma(t))


def karras(schedule: DiscreteSchedule, n: int, rho: float = 7.0, *, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: ``(max^(1/rho) + i/(n-1) * (min^(1/rho) - max^(1/rho)))^rho``, then 0.

    Bounds default to the model's ``sigma_min`` / ``sigma_max`` (A1111; k-diffusion ``get_sigmas_karras``).
    """
    sigma_min, sigma_max = _bounds(schedule, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(schedule: DiscreteSchedule, n: int, *, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma from ``sigma_max`` to ``sigma_min``, then 0
    (k-diffusion ``get_sigmas_exponential``)."""
    sigma_min, sigma_max = _bounds(schedule, sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(schedule: DiscreteSchedule, n: int, rho: float = 1.0, *, sigma_min=None,
                    sigma_max=None) -> torch.Tensor:
    """Polynomial in log sigma (k-diffusion ``get_sigmas_polyexponential``; A1111 default rho 1), then 0."""
    sigma_min, sigma_max = _bounds(schedule, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _append_zero(sigmas)


def _timestep_schedule(schedule: DiscreteSchedule, n: int, sgm: bool, sigma_min, sigma_max) -> torch.Tensor:
    sigma_min, sigma_max = _bounds(schedule, sigma_min, sigma_max)
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1] if sgm else torch.linspace(float(start), float(end), n)
    return _append_zero(schedule.t_to_sigma(ts))


def sgm_uniform(schedule: DiscreteSchedule, n: int, *, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """A1111 "SGM Uniform": ``n + 1`` timesteps evenly from t(sigma_max) to t(sigma_min), the last one
    dropped, mapped to sigma, then 0 (the SGM / SDXL "uniform" discretisation)."""
    return _timestep_schedule(schedule, n, True, sigma_min, sigma_max)


def normal(schedule: DiscreteSchedule, n: int, *, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """A1111 "Normal": ``n`` timesteps evenly from t(sigma_max) to t(sigma_min) inclusive, mapped to
    sigma, then 0."""
    return _timestep_schedule(schedule, n, False, sigma_min, sigma_max)


def simple(schedule: DiscreteSchedule, n: int) -> torch.Tensor:
    """A1111 / ComfyUI "Simple": every ``len/n``-th model sigma from the top (index ``-(1 + int(i*len/n))``),
    then 0."""
    sigmas = schedule._table("cpu")[0]
    stride = len(sigmas) / n
    picked = [float(sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def ddim(schedule: DiscreteSchedule, n: int) -> torch.Tensor:
    """A1111 "DDIM" schedule type: model sigmas at t = 1, 1 + s, 1 + 2s, ... (s = max(len // n, 1)),
    reversed, then 0.

    As in A1111 the length is ``len(range(1, len, s)) + 1``, which is ``n + 1`` only when ``len / n`` is
    close to an integer (e.g. n = 30 gives 32 sigmas).
    """
    sigmas = schedule._table("cpu")[0]
    step = max(len(sigmas) // n, 1)
    picked = [float(sigmas[t]) for t in range(1, len(sigmas), step)][::-1]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def kl_optimal(schedule: DiscreteSchedule, n: int, *, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """A1111 "KL Optimal" (Sabour et al. 2024, "Align Your Steps", eq. for the KL-optimal schedule):
    ``tan((1 - i/n) * atan(sigma_max) + i/n * atan(sigma_min))`` for i = 0..n.

    As in A1111 the last value is ``sigma_min``, not 0 (no final jump to the clean image).
    """
    sigma_min, sigma_max = _bounds(schedule, sigma_min, sigma_max)
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    steps = torch.arange(n + 1)
    return torch.tan(steps / n * alpha_min + (1.0 - steps / n) * alpha_max)


_AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
_AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def align_your_steps(schedule: DiscreteSchedule, n: int, *, sdxl: bool = False) -> torch.Tensor:
    """A1111 "Align Your Steps" (Sabour et al. 2024): NVIDIA's 10-step sigma tables for SD 1.5 / SDXL,
    log-linearly interpolated to ``n`` values, then 0. Independent of the model's sigma range."""
    table = _AYS_SDXL if sdxl else _AYS_SD15
    if n == len(table):
        values = np.array(table + [0.0])
    else:
        xs = np.linspace(0, 1, len(table))
        ys = np.log(table[::-1])
        interp = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
        values = np.append(interp, [0.0])
    return torch.tensor(values, dtype=torch.float32)


# key -> function(schedule, n, **options); the labels and per-sampler defaults live in registry.py.
SCHEDULE_FUNCTIONS = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
    "kl_optimal": kl_optimal,
    "align_your_steps": align_your_steps,
    "simple": simple,
    "normal": normal,
    "ddim": ddim,
}
