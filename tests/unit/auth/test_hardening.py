"""Hardening checks that are not about keys: logs, served files, what the code never does."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import pixelmill

PACKAGE = Path(pixelmill.__file__).parent
# Modules that can run code from data, install or fetch code: none may be imported.
FORBIDDEN_IMPORTS = {
    "pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "subprocess", "pip", "urllib.request",
}
# Loaders that unpickle: named calls pixelmill must never make.
FORBIDDEN_CALLS = {"torch.load", "torch.hub.load", "pickle.load", "pickle.loads", "numpy.load", "np.load"}


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_module_imports_an_unpickler_or_an_installer():
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n in FORBIDDEN_IMPORTS]
    assert found == []


def test_no_code_calls_a_pickle_loader_or_exec():
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in FORBIDDEN_CALLS or name in ("eval", "exec", "__import__"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}")
    assert found == []


def _weight_loads() -> list[tuple[str, ast.Call, str]]:
    """(place, call, source of the enclosing function) of every model-weight load."""
    loads = []
    for path in _python_files():
        source = path.read_text()
        for func in ast.walk(ast.parse(source, str(path))):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                name = _dotted(node.func) if isinstance(node, ast.Call) else ""
                loader = name.endswith(("from_pretrained", "from_single_file", "load_lora_weights"))
                if loader and "Tokenizer" not in name:  # tokenizers read text files only
                    segment = ast.get_source_segment(source, func)
                    loads.append((f"{path.name}:{node.lineno} {name}", node, segment))
    return loads


def test_weights_are_only_loaded_as_safetensors():
    # Folder loads must insist on safetensors (directly or through the kwargs built next to
    # them) so a pickle is never a fallback; single-file loads must pass refuse_pickle first.
    loads = _weight_loads()
    assert loads
    for place, call, function in loads:
        if place.endswith("from_single_file"):
            assert "refuse_pickle(" in function, place
            continue
        keywords = {k.arg: k.value for k in call.keywords}
        flag = keywords.get("use_safetensors")
        direct = isinstance(flag, ast.Constant) and flag.value is True
        splat = None in keywords and "use_safetensors=True" in function
        assert direct or splat or "demo" in place, place


def test_no_route_takes_a_url_or_a_file_name_except_webhooks(make_app):
    # Only webhook URLs are ever fetched, and they pass through netguard (checked here by
    # name: any new URL-ish field in a request body must be looked at).
    schema = make_app().app.openapi()
    urlish = set()
    for name, component in schema["components"]["schemas"].items():
        for field in component.get("properties", {}):
            if any(word in field.lower() for word in ("url", "uri", "path", "file", "href")):
                urlish.add(f"{name}.{field}")
    # ``single_file`` is a boolean in model listings (responses), not a file name.
    assert urlish <= {"JobCreate.webhook", "BatchCreate.webhook", "ResultPublic.url",
                      "ImagesResponse.url", "ImageData.url", "LoraPublic.single_file",
                      "ModelFilePublic.single_file"}, urlish


def test_a_500s_request_id_is_in_the_log_with_the_traceback(make_app, caplog):
    app = make_app()

    @app.app.get("/boom")
    async def boom():
        raise RuntimeError("secret at /home/user/.cache")

    with caplog.at_level(logging.ERROR, logger="pixelmill.api"):
        response = app.call("GET", "/boom")
    rid = response.json()["error"]["request_id"]
    assert response.status_code == 500 and "/home/user" not in response.text
    record = next(r for r in caplog.records if rid in r.getMessage())
    assert record.exc_info and "secret at /home/user" in str(record.exc_info[1])


def test_served_files_have_a_fixed_type_and_nosniff(make_app):
    app = make_app()
    file_id = app.app.state.services.results.put_many([(b"<html><script>alert(1)</script>", "image/png")])[0]
    response = app.call("GET", f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "file_id", ["..%2F..%2Fpixelmill.db", "..", "%2Fetc%2Fpasswd", "a" * 31 + ".", "webhook-secret"]
)
def test_file_ids_never_reach_the_filesystem_as_paths(make_app, file_id):
    app = make_app()
    (app.app.state.services.settings.data_dir / "webhook-secret").write_text("s")
    response = app.call("GET", f"/v1/files/{file_id}")
    assert response.status_code == 404 and "data" not in response.json()["error"]["message"]
