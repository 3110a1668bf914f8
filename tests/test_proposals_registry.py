"""Choosing proposers by name (vlmfo1.proposals.registry) and the missing-extra errors."""
from __future__ import annotations

import sys

import pytest

from vlmfo1.proposals import PostProcessConfig, Proposals, Proposer, registry
from vlmfo1.proposals.base import MissingDependencyError


@pytest.fixture
def clean_registry():
    saved = (dict(registry._REGISTRY), dict(registry._ALIASES))
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._ALIASES.clear()
    registry._ALIASES.update(saved[1])


class OneBoxProposer(Proposer):
    default_postprocess = PostProcessConfig(top_k=7)

    def __init__(self, side: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.side = side

    def _propose(self, image, *, image_id, prompts):
        return Proposals([[0, 0, self.side, self.side]], [1.0])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("contours", ("contours", None)),
        ("omdet:/w/omdet", ("omdet", "/w/omdet")),
        ("omdet:C:/models/omdet", ("omdet", "C:/models/omdet")),
        ("grounding-dino:IDEA-Research/grounding-dino-tiny", ("grounding-dino", "IDEA-Research/grounding-dino-tiny")),
        (" user:boxes.json ", ("user", "boxes.json")),
    ],
)
def test_parse_spec(spec, expected):
    assert registry.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "   ", "omdet:"])
def test_parse_spec_rejects_empty_parts(spec):
    with pytest.raises(ValueError):
        registry.parse_spec(spec)


def test_builtin_names_are_registered():
    names = set(registry.available_proposers())
    expected = {"user", "selective-search", "classical", "contours", "rapidocr", "omdet", "grounding-dino", "owlv2", "detr", "sam3", "yolo"}
    assert expected <= names


def test_every_builtin_import_string_resolves_to_a_proposer_class():
    # Resolving imports the module only; optional dependencies are imported when built.
    for name in ["user", "selective-search", "contours", "rapidocr", "omdet", "grounding-dino", "owlv2", "detr", "sam3", "yolo"]:
        assert issubclass(registry.get_proposer_class(name), Proposer)
    assert registry.get_proposer_class("classical") is registry.get_proposer_class("selective-search")


def test_register_and_build_custom_proposer(clean_registry, tmp_path):
    registry.register_proposer("one-box", OneBoxProposer, aliases=("single",))
    built = registry.build_proposer("single", side=4)
    assert isinstance(built, OneBoxProposer) and built.side == 4
    assert built.postprocess_config.top_k == 7  # the class default
    overridden = registry.build_proposer("one-box", postprocess={"nms_iou": None})
    assert overridden.postprocess_config.nms_iou is None and overridden.postprocess_config.top_k == 7
    from PIL import Image

    assert built.propose(Image.new("RGB", (8, 8))).boxes.tolist() == [[0, 0, 4, 4]]
    with pytest.raises(ValueError, match="takes no ':ARG'"):
        registry.build_proposer("one-box:extra")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_proposer("one-box", OneBoxProposer)
    registry.register_proposer("one-box", OneBoxProposer, overwrite=True)


def test_register_as_decorator_and_by_import_string(clean_registry):
    @registry.register_proposer("decorated")
    class Decorated(OneBoxProposer):
        pass

    assert registry.get_proposer_class("decorated") is Decorated
    registry.register_proposer("by-string", f"{__name__}:OneBoxProposer")
    assert registry.get_proposer_class("by-string") is OneBoxProposer
    with pytest.raises(TypeError):
        registry.register_proposer("not-a-proposer", dict)
    with pytest.raises(ValueError, match="no ':'"):
        registry.register_proposer("bad:name", OneBoxProposer)


def test_unknown_names_and_options_fail_clearly():
    with pytest.raises(KeyError, match="unknown proposer 'nope'.*contours"):
        registry.build_proposer("nope")
    with pytest.raises(ValueError, match="unknown post-processing option"):
        registry.build_proposer("contours", postprocess={"nms": 0.5})
    with pytest.raises(ValueError, match="needs weights"):
        registry.build_proposer("omdet")


def test_build_from_config(clean_registry):
    registry.register_proposer("one-box", OneBoxProposer)
    built = registry.build_proposer_from_config({"name": "one-box", "side": 3, "postprocess": {"top_k": 2}})
    assert built.side == 3 and built.postprocess_config.top_k == 2
    assert isinstance(registry.build_proposer_from_config("one-box"), OneBoxProposer)
    with pytest.raises(KeyError, match="name"):
        registry.build_proposer_from_config({"side": 3})


def _hide_module(monkeypatch, hidden: str):
    # A None entry in sys.modules makes `import hidden` raise ImportError.
    monkeypatch.setitem(sys.modules, hidden, None)


@pytest.mark.parametrize(
    "spec, module, extra",
    [("selective-search", "cv2", "proposals"), ("contours", "cv2", "proposals"), ("rapidocr", "rapidocr", "ocr"), ("yolo:w.pt", "ultralytics", "yolo")],
)
def test_missing_optional_dependency_names_the_extra(monkeypatch, spec, module, extra):
    _hide_module(monkeypatch, module)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'vlmfo1\[{extra}\]'"):
        registry.build_proposer(spec)


def test_plain_opencv_without_contrib_explains_the_conflict(monkeypatch):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed")
    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    with pytest.raises(MissingDependencyError, match="opencv-contrib"):
        registry.build_proposer("selective-search")
    # The contour proposer needs only core OpenCV.
    assert registry.build_proposer("contours") is not None
