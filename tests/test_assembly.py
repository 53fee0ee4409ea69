"""Assembly: built-ins plus installed plugins, and what happens when a plugin is broken."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from pybdev.app import App, build_parser
from pybdev.assembly import BUILTIN, Plugin, PluginError, assemble
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.subsystem import Subsystem
from tests.conftest import Target


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group="pybdev.modules")


def test_builtins_come_first_in_declaration_order() -> None:
    assembly = assemble([])
    assert assembly.plugins == [BUILTIN]
    assert [s.name for s in assembly.subsystems] == [
        "iobuf", "accel", "bdev", "scheduler", "nbd", "ublk", "nvmf"]
    assert assembly.bdev_modules[0] is MallocModule


def test_handlers_are_bound_to_the_object_that_owns_them() -> None:
    app = App(build_parser().parse_args(["--no-rpc-server"]), assemble([]))
    layer = app.subsystem(BdevSubsystem).layer
    malloc = app.registry.get("bdev_malloc_create")
    assert malloc is not None and malloc.subsystem == "bdev"
    assert getattr(malloc.handler, "__self__", None) is layer.module(MallocModule)
    get_bdevs = app.registry.get("bdev_get_bdevs")
    assert get_bdevs is not None and getattr(get_bdevs.handler, "__self__", None) is layer
    version = app.registry.get("spdk_get_version")
    assert version is not None and getattr(version.handler, "__self__", None) is app


def test_a_plugin_that_fails_to_import_is_named() -> None:
    assembly = assemble([entry_point("broken", "pybdev_no_such_module:PLUGIN")])
    assert assembly.plugins == [BUILTIN]
    [error] = assembly.errors
    assert "plugin 'broken' (pybdev_no_such_module:PLUGIN) failed to import" in str(error)
    assert "ModuleNotFoundError" in str(error)


def test_an_entry_point_that_is_not_a_plugin_is_refused() -> None:
    [error] = assemble([entry_point("odd", "pybdev.assembly:BUILTIN.name")]).errors
    assert "is a str, not a pybdev.assembly.Plugin" in str(error)


def test_clashing_module_names_fail_the_assembly(monkeypatch: pytest.MonkeyPatch) -> None:
    clash = Plugin("clash", bdev_modules=(MallocModule,))
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: clash)
    with pytest.raises(PluginError, match="bdev module names declared twice: malloc"):
        assemble([entry_point("clash", "x:y")])


def test_a_subsystem_with_an_unknown_dependency_fails_the_assembly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Orphan(Subsystem):
        name = "orphan"
        depends_on = ("nvmf_not_here",)

    monkeypatch.setattr(metadata.EntryPoint, "load",
                        lambda self: Plugin("orphan", subsystems=(Orphan,)))
    with pytest.raises(PluginError, match="depends on unknown"):
        assemble([entry_point("orphan", "x:y")])


@pytest.fixture
def broken_plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution whose entry point names a module that raises on import."""
    site = tmp_path / "site"
    dist = site / "pybdev_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pybdev-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pybdev.modules]\nbroken = pybdev_broken:PLUGIN\n")
    (site / "pybdev_broken.py").write_text(textwrap.dedent("""\
        raise RuntimeError("this plugin is broken on purpose")
    """))
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_target_starts_without_a_broken_plugin_and_says_why(
        broken_plugin_path: Path, start_target: Callable[..., Target]) -> None:
    t = start_target()
    assert "bdev_malloc_create" in t.rpc("rpc_get_methods")
    assert ("plugin 'broken' (pybdev_broken:PLUGIN) failed to import: RuntimeError: "
            "this plugin is broken on purpose") in t.log()


def test_strict_target_refuses_to_start_with_a_broken_plugin(
        broken_plugin_path: Path, start_target: Callable[..., Target]) -> None:
    t = start_target("--plugins-strict", wait=False)
    assert t.proc.wait(30) == 1
    assert "plugin 'broken'" in t.log()
    assert "not starting: --plugins-strict and 1 plugin(s) failed to load" in t.log()
