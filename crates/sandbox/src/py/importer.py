# Read-only import of pure-Python packages (sympy, mpmath) from one configured folder. Sources
# come through the native `_sandbox_fs`, which refuses anything outside that folder.
import sys, _sandbox_fs
from importlib.machinery import ModuleSpec

class _Loader:
    def __init__(self, root, rel, source):
        self.root, self.rel, self.source = root, rel, source
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        code = compile(self.source, "<pylib>/" + self.rel, "exec", dont_inherit=True)
        self.source = None
        exec(code, module.__dict__)

class PylibFinder:
    def __init__(self, root):
        self.root = root
    def find_spec(self, fullname, path=None, target=None):
        rel = fullname.replace(".", "/")
        for candidate, is_pkg in ((rel + "/__init__.py", True), (rel + ".py", False)):
            source = _sandbox_fs.read(self.root, candidate)
            if source is not None:
                spec = ModuleSpec(fullname, _Loader(self.root, candidate, source), is_package=is_pkg,
                                  origin="<pylib>/" + candidate)
                if is_pkg:
                    spec.submodule_search_locations = ["<pylib>/" + rel]
                return spec
        return None

def install(root):
    sys.meta_path.append(PylibFinder(root))
    # Stand-ins for host modules that sympy/mpmath import but never need for math.
    import types
    def _denied(name):
        def fn(*args, **kwargs):
            raise PermissionError(f"{name} is not available in this sandbox")
        return fn
    for name in ("subprocess", "socket", "signal"):
        m = types.ModuleType(name)
        m.__getattr__ = (lambda n, _name=name: _denied(_name + "." + n))
        sys.modules.setdefault(name, m)
    ct = types.ModuleType("ctypes")
    class c_long(int):
        pass
    ct.c_long = c_long
    ct.sizeof = lambda t: 8
    sys.modules.setdefault("ctypes", ct)
