"""Task `filter`: judge every sample of a finished sweep and keep the accepted ones.

  python -m jaxsynth.main --config configs/filter.py --workdir runs/filtered \
      --config.filter.input=runs/sweep --config.filter.name=classifier \
      --config.filter.classifier=runs/classifier

Variants: `classifier` (default; DiffuPT's filter), `realism`, `realism_class`. WORKDIR gets
`samples/` (the accepted samples as a sweep: original `index` kept, plus `score`),
`filter_report.json` (acceptance per class), `plots/` (grids before/after, acceptance bars) and
`metrics.json`.
"""

from jaxsynth.config import base_config
from jaxsynth.synthesis.filters import FILTERS, filter_config


def get_config(variant: str | None = None):
  """Returns the filter task's config; `variant` is classifier | realism | realism_class."""
  variant = variant or "classifier"
  if variant not in FILTERS:
    raise ValueError(f"unknown configs/filter.py variant {variant!r}; use one of "
                     f"{', '.join(FILTERS)}")
  config = base_config(task="filter")
  config.filter = filter_config(with_input=True)
  config.filter.name = variant
  return config
