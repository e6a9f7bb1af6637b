"""The bundle entry point (``python -m monai.bundle run training --config_file ...``) on the same schema as ``pivot``.

MONAI merges a ``--config_file`` list by top-level key: a later file's ``augmentation:`` replaces the whole section
of ``train.yaml``, and ``--training#learning_rat 0.5`` adds a key nothing reads. ``pivot train --config`` deep-merges
and validates instead (:func:`pivot_monai.config.load_config`). ``train.yaml``'s ``initialize`` runs
:func:`check_bundle_config` first, on the config MONAI merged (files and command-line overrides), so both entry points
accept and refuse the same keys:

* an unknown key is an error naming it, with "did you mean";
* a section that a later file replaced, dropping defaults of ``train.yaml``, is an error that names the dropped keys
  and says how to change only some (MONAI's own ``section#key`` ids, or ``pivot train --config``): defaults are never
  lost without a word;
* the training guide's names (:mod:`pivot_monai.config.guide`) are refused with PIVOT's names to use: MONAI has
  already parsed the config, so the bundle cannot rename them (``pivot train --config`` maps them);
* literal values are checked for type and range (:func:`pivot_monai.engines.validate.validate_training_config`).

MONAI reports any error raised in a config expression as a long traceback ending in "RuntimeError: Failed to
evaluate ConfigExpression". :func:`report_errors_in_one_line` (also in ``initialize``) makes the bundle command print
the cause as one line instead; :func:`bundle_errors` re-raises the cause for in-process callers (``pivot train``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from pivot_monai.config import (
    _FREE_FORM,
    GUIDE_SECTIONS,
    ConfigKeyError,
    _with_stage_sections,
    default_config_path,
    load_layered,
    translate,
    validate_keys,
)

__all__ = [
    "EXPECTED_ERRORS",
    "bundle_errors",
    "check_bundle_config",
    "check_merged_config",
    "dropped_defaults",
    "expected_cause",
    "report_errors_in_one_line",
]

logger = logging.getLogger(__name__)

EXPECTED_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError)
"""What bad input raises (as in :mod:`pivot_monai.cli`): reported in one line."""

_SOURCE = "bundle config (the --config_file files and --key overrides, as MONAI merged them)"
_DEBUG_ENV = "PIVOT_DEBUG"


def _monai_keys() -> set[str]:
    """Top-level keys MONAI adds itself: the metadata, and the experiment-tracking settings (``--tracking``)."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    keys = {"_meta_"}
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
        keys |= set(settings.get("configs", {}))
    return keys


def dropped_defaults(config: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """Mappings of the guide sections in ``config`` that lack keys ``defaults`` has: ``{section path: [keys]}``.

    Only the shallowest such mapping is reported (``augmentation``, not also ``augmentation.flip``).
    """
    out: dict[str, list[str]] = {}
    for key, default in defaults.items():
        path = f"{prefix}{key}"
        if not prefix and key not in GUIDE_SECTIONS:
            continue
        value = config.get(key)
        if path in _FREE_FORM or not isinstance(default, Mapping) or not isinstance(value, Mapping):
            continue
        missing = sorted(str(k) for k in default if k not in value)
        if missing:
            out[path] = missing
        else:
            out.update(dropped_defaults(value, default, f"{path}."))
    return out


def _node(config: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def _leaf_ids(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(id, value)`` of the leaves of a nested mapping, ids in MONAI's ``a#b#c`` form."""
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            yield from _leaf_ids(sub, f"{prefix}#{key}")
    else:
        yield prefix, value


def check_merged_config(config: Mapping[str, Any], source: str = _SOURCE) -> None:
    """Check a config merged by MONAI (``ConfigParser.get()``) against ``train.yaml``'s schema.

    Args:
        config: the raw merged config (``$``/``@`` expressions as strings).
        source: what is named in errors.

    Raises:
        ConfigKeyError: an unknown key ("did you mean"), or one of the training guide's names (with PIVOT's).
        ValueError: a section that dropped defaults of ``train.yaml``; a value of the wrong type or out of range.
    """
    from pivot_monai.engines.validate import check_literal_types, validate_training_config

    ignored = _monai_keys()
    config = {k: v for k, v in config.items() if k not in ignored}
    defaults = _with_stage_sections(load_layered([default_config_path()]))
    sections = {k: v for k, v in config.items() if k in GUIDE_SECTIONS}
    _, notes = translate(sections, source, base=defaults)
    if notes:
        raise ConfigKeyError(
            f"{source}: {'; '.join(notes)}: these are the training guide's names. The bundle command takes PIVOT's "
            "(bundle/configs/train.yaml): write the names after '->', or run `pivot train --config FILE`, which "
            "maps the guide's names"
        )
    validate_keys(config, defaults, source=source)
    dropped = dropped_defaults(config, defaults)
    if dropped:
        path, keys = next(iter(dropped.items()))
        given = _node(config, path)
        ids = "; ".join(f"{i}: {v!r}" for i, v in list(_leaf_ids(given, path.replace(".", "#")))[:3])
        raise ValueError(
            f"{source}: '{path.replace('.', '#')}' was given as a whole mapping, which replaced the one of "
            f"bundle/configs/train.yaml and dropped its defaults {', '.join(f'{path}.{k}' for k in keys)} (MONAI "
            "merges --config_file files and overrides key by key; it does not deep-merge). Give only the keys you "
            f"change, as MONAI ids ({ids or path.replace('.', '#') + '#<key>: <value>'}), or run `pivot train "
            "--config FILE`, which deep-merges"
        )
    validate_training_config(config)
    check_literal_types(config, defaults, skip=frozenset(_FREE_FORM))


def _running_parser() -> Any:
    """The ``ConfigParser`` evaluating the current bundle expression (the nearest one on the call stack)."""
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    raise RuntimeError(
        "check_bundle_config() checks the config of a running MONAI bundle workflow: call it from a config "
        "expression (train.yaml's initialize), or call check_merged_config(config) on a mapping"
    )


def check_bundle_config() -> None:
    """:func:`check_merged_config` on the config of the bundle workflow running this expression.

    ``train.yaml``'s ``initialize`` runs it first, before any component is built. It reads the merged config from
    the ``ConfigParser`` that evaluates the expression: MONAI gives expressions no reference to the raw config.

    Raises:
        ConfigKeyError, ValueError: as :func:`check_merged_config`.
    """
    parser = _running_parser()
    check_merged_config(parser.get())
    logger.debug("bundle config checked against bundle/configs/train.yaml")


def expected_cause(err: BaseException) -> BaseException | None:
    """The first expected error (:data:`EXPECTED_ERRORS`) in the ``__cause__`` chain of ``err``, ``err`` included.

    MONAI wraps what a config expression raises as ``RuntimeError("Failed to evaluate ConfigExpression ...")``;
    this is the error under it.
    """
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        if isinstance(node, EXPECTED_ERRORS):
            return node
        seen.add(id(node))
        node = node.__cause__
    return None


@contextlib.contextmanager
def bundle_errors() -> Iterator[None]:
    """Re-raise an expected error a bundle expression raised, without MONAI's RuntimeError around it.

    Example:
        >>> with bundle_errors():  # doctest: +SKIP
        ...     workflow.initialize()
    """
    try:
        yield
    except RuntimeError as err:
        cause = expected_cause(err)
        if cause is None:
            raise
        raise cause from None


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text if isinstance(err, (ValueError, KeyError, OSError)) else f"{type(err).__name__}: {text}"


def report_errors_in_one_line() -> None:
    """Make the bundle command print an expected error as one line (``ERROR ...: <message>``), not a traceback.

    Installs a ``sys.excepthook``, which Python calls only for an exception nothing caught (the command line's), so
    in-process callers still get the exception. Other exceptions, and every one with ``PIVOT_DEBUG=1``, keep the
    full traceback. The exit status is Python's for an uncaught exception, 1.
    """
    previous = sys.excepthook
    if getattr(previous, "_pivot_one_line", False):
        return

    def hook(kind: type[BaseException], err: BaseException, tb: Any) -> None:
        cause = expected_cause(err)
        if cause is None or os.environ.get(_DEBUG_ENV, "") not in ("", "0"):
            previous(kind, err, tb)
            return
        logging.getLogger("pivot_monai").error("%s (%s=1 shows the traceback)", _one_line(cause), _DEBUG_ENV)
        for handler in logging.getLogger().handlers + logging.getLogger("pivot_monai").handlers:
            handler.flush()

    hook._pivot_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook
