"""LoRA probes (``lora``) and the proxies built from them (``proxy``), SPEC §1-2."""

from opmix.probes.lora import (
           ProbeDelta,
           load_probe,
           lora_parameter_count,
           lora_targets,
           make_probe,
           save_probe,
)
from opmix.probes.proxy import ProxyModel

__all__ = ["ProbeDelta", "ProxyModel", "load_probe", "lora_parameter_count", "lora_targets", "make_probe",
           "save_probe"]
