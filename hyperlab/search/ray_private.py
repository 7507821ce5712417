"""The one place hyperlab reaches into Ray's private parts.

``trial_results`` reads a Tune trial's ``result.json`` through the trial's storage context (its
filesystem is not public API).

Ray reads ``RAY_AUTH_MODE`` into its C++ configuration once per process; a local search turns token
authentication on just before it starts its Ray, which may be after ``import ray`` (in a test run, say),
so the configuration is read again, as Ray's own ``ray start --head`` path does. Tested on Ray 2.60
(``pyproject.toml`` bounds the version).
"""

from __future__ import annotations


def reload_config() -> None:
    from ray._raylet import Config

    Config.initialize("")


def trial_results(trial) -> list[dict]:
    """Every result a Tune trial reported, from its ``result.json`` (Tune's JSON logger writes it on the
    driver as results come, and syncs it to the trial's folder in storage): the driver's copy when this
    machine has it, else the one in storage. Empty when neither can be read."""
    import json
    from pathlib import Path

    from ray.tune.result import EXPR_RESULT_FILE

    text = None
    if trial.local_path and (Path(trial.local_path) / EXPR_RESULT_FILE).is_file():
        text = (Path(trial.local_path) / EXPR_RESULT_FILE).read_text()
    elif trial.path:
        try:
            with trial.storage.storage_filesystem.open_input_stream(f"{trial.path}/{EXPR_RESULT_FILE}") as f:
                text = f.read().decode()
        except (FileNotFoundError, OSError):
            return []
    results = []
    for line in (text or "").splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the driver's end
            continue
    return results
