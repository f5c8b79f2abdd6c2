"""The typed config tree: one dataclass per section, loaded from TOML, validated up front.

`load_config(path, overrides)` is the only entry point most code needs. The package:
`sections` (the dataclasses), `methods` (the method switch's sections), `load` (TOML,
overrides, coercion), `validate` (the rules). Every problem is
raised as `ConfigError` whose message starts with the dotted key it is about, e.g.
``moco.queue_size: 1000 is not divisible by the global batch 64 (...)``.

Secrets are never config fields: S3 and MLflow credentials come from the environment.
"""

from pipeline.config.load import *  # noqa: F403
from pipeline.config.load import _apply_override, _coerce, _parse_scalar  # noqa: F401
from pipeline.config.methods import *  # noqa: F403
from pipeline.config.sections import *  # noqa: F403
from pipeline.config.validate import *  # noqa: F403
from pipeline.config.validate import _need  # noqa: F401
