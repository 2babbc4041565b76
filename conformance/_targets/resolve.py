"""Resolving a target: import ``"package.module:attr"`` or ``"path/to/file.py:attr"``, and the import code
a reproducer needs for an object.  Imports nothing beyond the standard library."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys

__all__ = ["TargetError", "resolve", "import_code_for", "object_name"]


class TargetError(ValueError):
    """A target string that cannot be resolved (bad syntax, import failure, missing attribute)."""



def resolve(ref: str):
    """Import ``package.module:attr`` or ``path/to/file.py:attr``; returns (object, import code, expr)."""
    if not isinstance(ref, str) or ":" not in ref:
        raise TargetError(f"TARGET must look like 'package.module:attr' or 'path/to/file.py:attr', got {ref!r}")
    mod_part, attr = ref.rsplit(":", 1)
    if not mod_part or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise TargetError(f"TARGET must look like 'package.module:attr' or 'path/to/file.py:attr', got {ref!r}")
    if mod_part.endswith(".py") or os.sep in mod_part or "/" in mod_part:
        path = os.path.abspath(mod_part)
        if not os.path.isfile(path):
            raise TargetError(f"TARGET file {mod_part!r} does not exist")
        name = "_rankspec_target_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"cannot load {mod_part!r} as a Python file")
        module = importlib.util.module_from_spec(spec)
        folder = os.path.dirname(path)
        added = folder not in sys.path
        if added:
            sys.path.insert(0, folder)
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise TargetError(f"importing {mod_part!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if added:
                sys.path.remove(folder)
        head = attr.split(".")[0]
        code = ("import importlib.util\n"
                f"_spec = importlib.util.spec_from_file_location('target_module', {path!r})\n"
                "_module = importlib.util.module_from_spec(_spec)\n"
                "_spec.loader.exec_module(_module)\n"
                f"{head} = _module.{head}")
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as exc:
            raise TargetError(f"cannot import module {mod_part!r}: {type(exc).__name__}: {exc}") from exc
        code = f"from {mod_part} import {attr.split('.')[0]}"
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"{mod_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj, code, attr


def _lookup(module: str, qualname: str):
    """The object ``module.qualname`` if it is already imported, else None (never imports)."""
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def import_code_for(obj):
    """(import code, expression) for a Python object, or a placeholder when it is not importable."""
    cls = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    module = getattr(cls, "__module__", None)
    qual = getattr(cls, "__qualname__", None)
    importable = (module and qual and "<" not in qual and module != "__main__"
                  and not module.startswith("_rankspec_target_") and _lookup(module, qual) is cls)
    if importable:
        head = qual.split(".")[0]
        code = f"from {module} import {head}"
        if cls is obj:
            return code, qual, True
        built = getattr(obj, "__rankspec_init__", None)  # an instance that says how it was built
        if isinstance(built, str) and built.startswith(qual + "("):
            return code + f"\ntarget = {built}", "target", True
        return code + f"\ntarget = {qual}()  # an instance like the one checked", "target", True
    name = getattr(obj, "__name__", None)
    if isinstance(name, str) and name.isidentifier() and name != "<lambda>":
        where = "your script" if module == "__main__" else f"a local scope of {module}"
        return f"# {name} is defined in {where}: paste its definition (or import it) here", name, False
    return ("# define or import the checked implementation here (it is not importable by name):\n"
            "target = ...", "target", False)



def object_name(obj) -> str:
    cls = obj if inspect.isclass(obj) or inspect.isfunction(obj) else None
    if cls is not None:
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    if inspect.ismethod(obj) or callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return f"{type(obj).__module__}.{type(obj).__qualname__} instance"

