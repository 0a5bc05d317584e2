"""Static checks of the Slicer extension files (no Slicer, no Qt needed).

* the ``.ui`` parses, every ``self.ui.<name>`` the Widget uses exists in it, and its
  ``SlicerParameterName`` bindings match the parameter node's fields one to one;
* the module file parses and imports with stub ``qt`` / ``ScriptedLoadableModule`` /
  ``parameterNodeWrapper`` (only the thin GUI layer needs them);
* the Logic package never imports Qt;
* the CMake files list every script and resource, and carry the extension metadata;
* the icons are real 128x128 PNG images.
"""
from __future__ import annotations

import ast
import re
import struct
import subprocess
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SHMoARegExtension"
MODULE_FILE = MODULE_DIR / "SHMoARegistration.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SHMoARegistration.ui"
LIB_DIR = MODULE_DIR / "SHMoARegistrationLib"


def ui_tree() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def ui_widget_names() -> set[str]:
    return {w.get("name") for w in ui_tree().iter("widget")}


def ui_parameter_bindings() -> dict[str, str]:
    """``{widget objectName: SlicerParameterName}``."""
    bindings = {}
    for widget in ui_tree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.find("string").text
    return bindings


def module_ast() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_node_fields() -> set[str]:
    for node in ast.walk(module_ast()):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module file")


# -- .ui ---------------------------------------------------------------------------------------
def test_ui_parses_and_has_the_module_root():
    root = ui_tree()
    assert root.tag == "ui" and root.find("class").text == "SHMoARegistration"
    assert root.find("widget").get("class") == "qMRMLWidget"
    custom = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {cls for cls in used if not cls.startswith("Q")} <= custom


def test_every_widget_the_widget_class_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the Widget uses no ui widget?"
    missing = used - ui_widget_names()
    assert not missing, f"widgets used in SHMoARegistration.py but absent from the .ui: {sorted(missing)}"


def test_ui_bindings_match_parameter_node_fields():
    bound = set(ui_parameter_bindings().values())
    fields = parameter_node_fields()
    assert bound == fields, f"only in .ui: {sorted(bound - fields)}; only in the parameter node: {sorted(fields - bound)}"


def test_ui_widget_names_are_unique():
    names = [w.get("name") for w in ui_tree().iter("widget")]
    assert len(names) == len(set(names))


# -- module file ----------------------------------------------------------------------------------
def test_module_file_defines_the_slicer_classes():
    classes = {node.name for node in module_ast().body if isinstance(node, ast.ClassDef)}
    assert {"SHMoARegistration", "SHMoARegistrationWidget", "SHMoARegistrationTest"} <= classes


@pytest.fixture
def module_with_stubs(monkeypatch):
    """Import the module file with stubs for the Qt-only parts of Slicer."""
    pytest.importorskip("slicer")
    import slicer

    qt = types.ModuleType("qt")

    class QTimer:
        def __init__(self):
            self.timeout = types.SimpleNamespace(connect=lambda slot: None)

        def setInterval(self, ms):
            self.interval = ms

    qt.QTimer = QTimer
    qt.QMessageBox = types.SimpleNamespace(Yes=1, No=2, Cancel=4)
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (Base,), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    for name in ("Choice", "Default", "WithinRange"):
        setattr(wrapper, name, lambda *args, **kwargs: None)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", wrapper, raising=False)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "SHMoARegistration", raising=False)
    import SHMoARegistration

    return SHMoARegistration


def test_module_file_imports_with_stub_qt(module_with_stubs):
    module = module_with_stubs
    parent = types.SimpleNamespace()
    module.SHMoARegistration(parent)
    assert parent.categories == ["Registration"] and "transform" in parent.helpText
    parameters = types.SimpleNamespace(
        preset="brain-mri", weightsFile=Path("."), device=module.Device.cpu, iterations=-1, affine=False,
        diffeomorphic=True, spacingMm=0.0, seed=3, expertMaps=False, jacobian=True, keepTemp=True,
        applyTransformToMoving=False,
    )
    options = module.options_from_parameters(parameters)
    assert (options.weights, options.iterations, options.spacing_mm) == (None, None, None)
    assert options.engine_arguments()[:6] == ["--preset", "brain-mri", "--device", "cpu", "--seed", "3"]
    assert {d.value for d in module.Device} == {"auto", "cpu", "cuda"}


def test_every_logic_call_of_the_widget_exists(module_with_stubs):
    """The Widget only runs inside Slicer's GUI: check by name that what it calls on the Logic, the
    transform tools and the other Lib modules exists, so a typo cannot hide until a user clicks."""
    module = module_with_stubs
    targets = {"logic": module.SHMoARegistrationLogic, "transform_tools": module.transform_tools,
               "dependencies": module.dependencies, "selftest": module.selftest}
    used = set()
    for node in ast.walk(module_ast()):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self" \
                and value.attr == "logic":
            used.add(("logic", node.attr))
        elif isinstance(value, ast.Name) and value.id in targets:
            used.add((value.id, node.attr))
    assert {name for name, _ in used} >= {"logic", "transform_tools"}
    missing = sorted(f"{owner}.{attr}" for owner, attr in used if not hasattr(targets[owner], attr))
    assert not missing, f"the Widget calls what does not exist: {missing}"


def test_mask_segment_names_and_inputs_from_the_gui(module_with_stubs):
    module = module_with_stubs
    assert module.segment_names(" lesion, needle ,,") == ("lesion", "needle")
    assert module.segment_names("") is None and module.segment_names(None) is None
    nodes = {name: object() for name in ("fixed", "moving", "mask")}
    parameters = types.SimpleNamespace(
        fixedVolume=nodes["fixed"], movingVolume=nodes["moving"], fixedLabels=None, movingLabels=None,
        fixedLandmarks=None, movingLandmarks=None, fixedMask=None, movingMask=nodes["mask"],
        fixedMaskSegments="", movingMaskSegments="lesion")
    inputs = module.inputs_from_parameters(parameters)
    assert inputs.moving_mask is nodes["mask"] and inputs.moving_mask_segments == ("lesion",)
    assert inputs.fixed_mask is None and inputs.fixed_mask_segments is None


def test_preflight_suggestions_are_written_to_the_parameter_node(module_with_stubs):
    """Yes in the pre-flight dialog changes the parameter node (the GUI shows what runs), and every option a
    finding of ``preflight.py`` may suggest has a parameter node field."""
    module = module_with_stubs
    parameters = types.SimpleNamespace(
        preset="auto", weightsFile=Path("."), device=module.Device.cuda, iterations=-1, affine=False,
        diffeomorphic=False, spacingMm=0.0, seed=0, expertMaps=True, jacobian=True, keepTemp=False,
        applyTransformToMoving=False,
    )
    module.apply_suggestion(parameters, {"spacing_mm": 2.9, "affine": True})
    module.apply_suggestion(parameters, {"device": "cpu"})
    assert (parameters.spacingMm, parameters.affine, parameters.device) == (2.9, True, module.Device.cpu)
    options = module.options_from_parameters(parameters)
    assert (options.spacing_mm, options.affine, options.device) == (2.9, True, "cpu")
    with pytest.raises(ValueError, match="weights"):
        module.apply_suggestion(parameters, {"weights": "other.pt"})
    suggested = set()
    for node in ast.walk(ast.parse((LIB_DIR / "preflight.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
            for argument in node.args:
                if isinstance(argument, ast.Dict):
                    suggested |= {key.value for key in argument.keys if isinstance(key, ast.Constant)}
    assert {"affine", "device", "spacing_mm"} <= suggested <= set(module.PARAMETER_OF_OPTION)


# -- the Logic is Qt-free ---------------------------------------------------------------------------
ALLOWED_TOP_LEVEL = {"slicer", "vtk", "numpy", "SimpleITK", "__future__"} | set(sys.stdlib_module_names)


@pytest.mark.parametrize("path", sorted(LIB_DIR.glob("*.py")), ids=lambda p: p.name)
def test_logic_package_imports_no_qt(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in ALLOWED_TOP_LEVEL, f"{path.name} imports {name}"
            assert name.split(".")[0] not in {"qt", "ctk", "PythonQt"}


# -- CMake and resources ------------------------------------------------------------------------------
def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"no set({variable} ...)"
    return match.group(1).split()


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "SHMoARegistration") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk
    resources = {s.replace("${MODULE_NAME}", "SHMoARegistration") for s in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    assert all((MODULE_DIR / r).is_file() for r in resources)
    assert {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()} == resources
    assert "slicerMacroBuildScriptedModule" in text and "SHMoAReg/*.py" in text and "NO_INSTALL_SUBDIR" in text


def test_extension_cmake_has_the_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "project(SHMoARegExtension)" in text
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Registration")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(SHMoARegExtension)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text


@pytest.mark.parametrize("path", [MODULE_DIR / "Resources" / "Icons" / "SHMoARegistration.png",
                                  REPO / "Resources" / "Icons" / "SHMoARegExtension.png"], ids=lambda p: p.name)
def test_icons_are_128_pixel_pngs(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
    assert len(data) > 2000  # a drawing, not an empty image


def test_presets_come_from_the_engine_without_torch():
    """The Logic takes the engine's presets and grid rules (``preflight.py``); importing them in Slicer's process
    must not import torch."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from SHMoARegistrationLib.options import PRESET_SPACING_MM\n"
            "from SHMoARegistrationLib import preflight  # the engine's grid rules and memory figures\n"
            "from SHMoAReg.preprocess.presets import PRESETS\n"
            "assert PRESET_SPACING_MM == {n: p.spacing for n, p in PRESETS.items()}, PRESET_SPACING_MM\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR), str(REPO)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
