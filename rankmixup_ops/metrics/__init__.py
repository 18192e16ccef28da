"""Calibration and uncertainty metrics (definitions in ``docs/metrics.md``).

- :mod:`.calibration`: ECE, AdaECE, classwise ECE, MCE, over/under-confidence, NLL, accuracy
  (:func:`calibration_errors`, the streaming and ``torch.distributed``-mergeable
  :class:`CalibrationMeter`, :func:`reliability_diagram`);
- :mod:`.temperature`: post-hoc temperature scaling (:func:`fit_temperature`,
  :class:`TemperatureScaler`);
- :mod:`.ood`: out-of-distribution detection by confidence (:func:`ood_metrics`: AUROC,
  AUPR-in/out, FPR at 95% TPR).
"""

from .calibration import METRICS, CalibrationMeter, calibration_errors, reliability_diagram
from .ood import OOD_METRICS, OOD_SCORES, ood_metrics
from .temperature import TEMPERATURE_RANGE, TemperatureScaler, fit_temperature

__all__ = [
    "METRICS",
    "OOD_METRICS",
    "OOD_SCORES",
    "TEMPERATURE_RANGE",
    "CalibrationMeter",
    "TemperatureScaler",
    "calibration_errors",
    "fit_temperature",
    "ood_metrics",
    "reliability_diagram",
]
