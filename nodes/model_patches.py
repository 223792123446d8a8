"""Nodes that return a changed view of a MODEL (never editing the cached one): ModelSamplingDiscrete."""
from __future__ import annotations

from typing import Any

from executor.schema import Input, Node, Output


class ModelSamplingDiscrete(Node):
    type = "ModelSamplingDiscrete"
    category = "advanced/model"
    description = ("Overrides the model's prediction type (eps, v-prediction, LCM, x0) on its own noise schedule; "
                   "zsnr rescales the schedule to zero terminal SNR.")
    inputs = (Input("model", "MODEL"),
              Input("sampling", "COMBO", options=["eps", "v_prediction", "lcm", "x0"]),
              Input("zsnr", "BOOLEAN", default=False))
    outputs = (Output("MODEL"),)

    def run(self, ctx: Any, model: Any, sampling: str, zsnr: bool) -> tuple[Any, ...]:
        from .diffusion.model_sampling import ModelSamplingDiscrete as Sampling

        ms = Sampling(**_schedule(model.model_sampling), prediction=sampling, zsnr=zsnr)
        return (model.clone(model_sampling=ms.to(model.device)),)


def _schedule(ms: Any) -> dict[str, Any]:
    cfg = ms.config
    return {"beta_start": cfg["beta_start"], "beta_end": cfg["beta_end"], "beta_schedule": cfg["beta_schedule"],
            "num_timesteps": cfg["num_train_timesteps"]}


NODES = (ModelSamplingDiscrete,)
