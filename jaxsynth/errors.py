"""The project's own exception types: `main` turns them into one clear line and a non-zero exit."""


class JaxsynthError(Exception):
  """Base class: a problem the user can fix; the message says what, where and how."""


class ConfigError(JaxsynthError):
  """A config key, value or type is wrong."""


class DataError(JaxsynthError):
  """A data file, manifest or sample is missing, malformed or inconsistent."""


class CheckpointError(JaxsynthError):
  """A checkpoint or workdir is missing, incompatible or would be overwritten."""


class TrainingError(JaxsynthError):
  """Training cannot go on (for example the loss became NaN or Inf)."""


class StorageError(JaxsynthError):
  """A write failed for lack of space (or a file-size limit); what was saved before is intact."""


class BusyError(JaxsynthError):
  """Another live process holds the run directory."""
