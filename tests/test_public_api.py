"""The public API is declared: which modules are public, and what each exports.

Public: the package (``Worker``), ``worker``, ``config`` (the typed ``Settings``), the CLI
(``__main__``) and the presets. Everything else is named with a leading underscore and may change in
any release. A preset's ``__all__`` is what ``from hardened_worker.presets.vm import *`` puts in a
``gunicorn.conf.py``: gunicorn settings and hooks only, plus ``also`` (chains an own hook after the
preset's).
"""

from __future__ import annotations

import importlib
import pkgutil

from gunicorn.config import KNOWN_SETTINGS

import hardened_worker

PUBLIC = {
    "hardened_worker",
    "hardened_worker.__main__",
    "hardened_worker.config",
    "hardened_worker.worker",
    "hardened_worker.presets",
    "hardened_worker.presets.base",
    "hardened_worker.presets.kubernetes",
    "hardened_worker.presets.memory_constrained",
    "hardened_worker.presets.vm",
}
PRESETS = sorted(m for m in PUBLIC if m.startswith("hardened_worker.presets."))


def _modules() -> list[str]:
    names = ["hardened_worker", "hardened_worker.__main__"]
    for info in pkgutil.walk_packages(hardened_worker.__path__, "hardened_worker."):
        names.append(info.name)
    return names


def _is_private(name: str) -> bool:
    return any(part.startswith("_") and part != "__main__" for part in name.split("."))


def test_every_module_is_public_by_the_list_or_named_private():
    public = {name for name in _modules() if not _is_private(name)}
    assert public == PUBLIC


def test_every_public_module_declares_all_and_every_name_in_it_exists():
    for name in sorted(PUBLIC):
        module = importlib.import_module(name)
        exported = module.__all__
        assert len(exported) == len(set(exported)), (name, exported)
        for attr in exported:
            if name == "hardened_worker.presets":
                importlib.import_module(f"{name}.{attr}")
            else:
                assert hasattr(module, attr), (name, attr)


def test_a_preset_exports_gunicorn_settings_and_hooks_only():
    gunicorn_names = {s.name for s in KNOWN_SETTINGS}
    for name in PRESETS:
        module = importlib.import_module(name)
        assert set(module.__all__) - {"also"} <= gunicorn_names, name
        assert "worker_class" in module.__all__


def test_the_package_exports_the_worker_class():
    assert hardened_worker.__all__ == ["Worker", "__version__"]
    from hardened_worker.worker import Worker

    assert hardened_worker.Worker is Worker
