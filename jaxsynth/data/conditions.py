"""What a generator is conditioned on (`diffusion.condition`), and the map between its condition
ids and a sample's (class, group).

  class        id = class                               (num_conditions = num_classes)
  group        id = group                               (num_conditions = num_groups)
  class_group  id = class * num_groups + group          (num_conditions = num_classes * num_groups,
                                                          class-major: class 0's groups first)

A sample's group is its group id (`base.group_ids`: column 0 of (N, G) groups). The null label of
classifier-free guidance is id num_conditions, as with classes. A sweep of a `group` run writes
every label as 0 (its samples have no class: the manifest says num_classes 1) and the group ids
in `groups`; a `class_group` run's sweep writes the class in `labels` and the group in `groups`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsynth.data.base import ImageSource, RelabelledSource, group_ids, num_groups
from jaxsynth.errors import ConfigError, DataError

CONDITIONS = ("class", "group", "class_group")


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """The condition ids of a run: `mode` (one of CONDITIONS) over its classes and groups."""
  mode: str = "class"
  num_classes: int = 1
  num_groups: int = 0
  class_names: tuple[str, ...] = ()
  group_names: tuple[str, ...] = ()

  @property
  def uses_groups(self) -> bool:
    """Whether the condition ids involve groups (a sweep then writes `groups`)."""
    return self.mode != "class"

  @property
  def num_conditions(self) -> int:
    """How many condition ids the denoiser embeds (its null label is this index)."""
    return {"class": self.num_classes, "group": self.num_groups,
            "class_group": self.num_classes * self.num_groups}[self.mode]

  @property
  def sweep_classes(self) -> int:
    """The class count a sweep's manifest records: 1 for `group` (labels are all 0)."""
    return 1 if self.mode == "group" else self.num_classes

  def ids(self, labels, groups) -> np.ndarray:
    """Condition ids int64 (N,) of samples with class `labels` and group ids `groups`."""
    labels = np.asarray(labels, np.int64)
    if self.mode == "class":
      return labels
    groups = np.asarray(groups, np.int64)
    return groups if self.mode == "group" else labels * self.num_groups + groups

  def split(self, ids) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, groups) a sweep writes for condition ids; groups is None for `class`."""
    ids = np.asarray(ids, np.int64)
    if self.mode == "class":
      return ids, None
    if self.mode == "group":
      return np.zeros_like(ids), ids
    return ids // self.num_groups, ids % self.num_groups

  def names(self) -> list[str]:
    """A name per condition id: the class, the group, or 'class/group' for a cell."""
    classes = list(self.class_names) or [str(c) for c in range(self.num_classes)]
    groups = list(self.group_names) or [str(g) for g in range(self.num_groups)]
    if self.mode == "class":
      return classes
    if self.mode == "group":
      return groups
    return [f"{c}/{g}" for c in classes for g in groups]

  def manifest(self) -> dict:
    """The keys a sweep's manifest records about its conditioning."""
    out = {"condition": self.mode}
    if self.uses_groups:
      out.update(num_groups=self.num_groups,
                 group_names=list(self.group_names) or [str(g) for g in range(self.num_groups)])
    return out


def from_source(mode: str, train: ImageSource, key: str = "diffusion.condition") -> Conditioning:
  """The conditioning `mode` over the classes and groups of the train split `train`."""
  if mode not in CONDITIONS:
    raise ConfigError(f"config key '{key}' has bad value {mode!r}: use one of "
                      f"{', '.join(CONDITIONS)}")
  if mode == "class":
    return Conditioning(mode, train.num_classes, 0, tuple(train.class_names))
  if group_ids(train) is None or num_groups(train) == 0:
    raise ConfigError(f"config key '{key}' = {mode!r} needs group ids, but the train split of "
                      f"{train.name} has none: use data with {{split}}_groups (.npz) or group "
                      f"columns (folder CSV), or set {key}=class")
  return Conditioning(mode, train.num_classes, num_groups(train), tuple(train.class_names),
                      tuple(getattr(train, "group_names", ()) or ()))


def condition_ids(conditioning: Conditioning, source: ImageSource) -> np.ndarray:
  """The condition id of every sample of `source`; a DataError for a group outside the run's."""
  if not conditioning.uses_groups:
    return source.labels
  groups = group_ids(source)
  if groups is None:
    raise DataError(f"{source.name} has no group ids, but the generator is conditioned on "
                    f"'{conditioning.mode}' (diffusion.condition): give every split "
                    "{split}_groups, or set diffusion.condition=class")
  bad = np.flatnonzero((groups < 0) | (groups >= conditioning.num_groups))
  if bad.size:
    i = int(bad[0])
    describe = getattr(source, "describe", lambda k: f"{source.name} sample {k}")
    raise DataError(f"{describe(i)} has group id {int(groups[i])}, outside the train split's "
                    f"{conditioning.num_groups} groups [0, {conditioning.num_groups}): fix the "
                    "id, or name every group in the data set's group_names")
  return conditioning.ids(source.labels, groups)


def conditioned(source: ImageSource, conditioning: Conditioning) -> ImageSource:
  """`source` labelled with condition ids (itself for `class`: nothing changes)."""
  if not conditioning.uses_groups:
    return source
  return RelabelledSource(source, condition_ids(conditioning, source),
                          conditioning.num_conditions, tuple(conditioning.names()))
