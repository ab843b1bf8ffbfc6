# Runs once per interpreter, after the prelude and in its namespace. Each call gets a private
# in-memory working directory, as code-judge gives each submission a temporary folder: open(),
# os and os.path, and pathlib see the files the call wrote there and nothing of the host (the
# host's file system stays unreachable: the posix stand-in refuses it, and nothing here reads
# or writes outside this dictionary). Sizes are capped; everything is dropped when the call
# ends (a session keeps its files until the session ends).
import builtins as _builtins, io as _io, os as _os, posixpath as _pp, stat as _stat, errno as _errno

_FS_CWD = "/sandbox"
_FS_MAX_BYTES = 16 << 20
_FS_MAX_FILES = 1024

class _FsState:
    __slots__ = ("files", "dirs", "cwd", "live", "generation")

_fs = _FsState()

def _fs_reset():
    # Handles of an earlier call that are closed (or collected) later write nowhere. First: the
    # old list of live handles may hold a handle's last reference, and its close then runs
    # while that list is replaced below, into the new files.
    _fs.generation = object()
    _fs.files = {}                 # absolute path -> bytes
    _fs.dirs = {"/", _FS_CWD}      # absolute paths of folders
    _fs.cwd = _FS_CWD
    _fs.live = []                  # open writable handles, written back on close

_fs_reset()

def _fspath(p):
    if isinstance(p, (str, bytes)):
        return p
    method = getattr(type(p), "__fspath__", None)
    if method is None:
        raise TypeError(f"expected str, bytes or os.PathLike object, not {type(p).__name__}")
    value = method(p)
    if not isinstance(value, (str, bytes)):
        raise TypeError(f"expected {type(p).__name__}.__fspath__() to return str or bytes, not {type(value).__name__}")
    return value

def _fs_abs(p):
    p = _fspath(p)
    if isinstance(p, bytes):
        p = p.decode("utf-8", "surrogateescape")
    if "\0" in p:
        raise ValueError("embedded null byte")
    p = _pp.normpath(_pp.join(_fs.cwd, p))
    return "/" + p.lstrip("/")

def _fs_sync():
    """Writes back what open writable handles hold, so other calls see it."""
    for handle in _fs.live:
        if not handle.closed:
            _fs.files[handle.name_abs] = handle._contents()

def _fs_detach(path):
    """Handles still open on a removed or renamed file write nowhere (as on POSIX)."""
    for handle in [h for h in _fs.live if h.name_abs == path]:
        _fs.live.remove(handle)
        handle._w_back = False

def _fs_used(extra=0):
    return sum(len(v) for v in _fs.files.values()) + extra

def _fs_parent_ok(path):
    parent = _pp.dirname(path)
    if parent not in _fs.dirs:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", path)

class _Handle:
    """What the two handle types share: name, mode, write-back, the size cap."""
    def _setup(self, path, mode, readable, writable, append):
        self.name_abs = path
        self.name = path
        self.mode = mode
        self._r, self._w, self._append = readable, writable, append
        self._w_back = writable
        self._generation = _fs.generation
        if writable:
            _fs.live.append(self)
    def readable(self):
        return self._r
    def writable(self):
        return self._w
    def _check_write(self, n):
        """Refuses a write of n more bytes (characters) that would pass the cap."""
        if not self._w:
            raise _io.UnsupportedOperation("not writable")
        if self._append:
            self.seek(0, 2)
        others = _fs_used() - len(_fs.files.get(self.name_abs, b""))
        if others + self.tell() + n > _FS_MAX_BYTES:
            raise OSError(_errno.ENOSPC, f"No space left on device (the working directory holds at most {_FS_MAX_BYTES >> 20} MiB)", self.name)
    def _check_read(self):
        if not self._r:
            raise _io.UnsupportedOperation("not readable")
    def _store(self):
        if self._w_back and self._generation is _fs.generation:
            _fs.files[self.name_abs] = self._contents()
            self._w_back = False
            if self in _fs.live:
                _fs.live.remove(self)

    # Reads check the mode; close writes back. `_base` is the in-memory stream underneath.
    def read(self, size=-1):
        self._check_read()
        return self._base.read(self, size)
    def readline(self, size=-1):
        self._check_read()
        return self._base.readline(self, size)
    def readlines(self, hint=-1):
        self._check_read()
        return self._base.readlines(self, hint)
    def __iter__(self):
        self._check_read()
        return self._base.__iter__(self)
    def writelines(self, lines):
        for line in lines:
            self.write(line)
    def close(self):
        if not self.closed:
            self._store()
        self._base.close(self)
    def __del__(self):
        self.close()

class _BinaryFile(_Handle, _io.BytesIO):
    _base = _io.BytesIO
    def __init__(self, path, mode, data, readable, writable, append):
        _io.BytesIO.__init__(self, data)
        self._setup(path, mode, readable, writable, append)
        if append:
            self.seek(0, 2)
    def _contents(self):
        return self.getvalue()
    def write(self, b):
        self._check_write(len(memoryview(b).cast("B")))
        return _io.BytesIO.write(self, b)

class _TextFile(_Handle, _io.StringIO):
    _base = _io.StringIO
    def __init__(self, path, mode, text, readable, writable, append, encoding, errors, newline):
        _io.StringIO.__init__(self, text, newline)
        self._encoding, self._errors = encoding, errors
        self._setup(path, mode, readable, writable, append)
        if append:
            self.seek(0, 2)
        else:
            self.seek(0)
    encoding = property(lambda self: self._encoding)
    errors = property(lambda self: self._errors)
    def _contents(self):
        return self.getvalue().encode(self._encoding, self._errors)
    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._check_write(len(s))
        return _io.StringIO.write(self, s)

def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    if isinstance(file, int):
        raise OSError(_errno.EBADF, "file descriptors are not available in this sandbox")
    if not isinstance(mode, str) or not mode or len(set(mode)) != len(mode) or set(mode) - set("rwaxbt+"):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or ("b" in mode and "t" in mode):
        raise ValueError(f"invalid mode: {mode!r}")
    binary = "b" in mode
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    kind, plus = kinds[0], "+" in mode
    path = _fs_abs(file)
    _fs_sync()
    if path in _fs.dirs:
        raise IsADirectoryError(_errno.EISDIR, "Is a directory", _fspath(file))
    exists = path in _fs.files
    if kind == "r" and not exists:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(file))
    if kind == "x" and exists:
        raise FileExistsError(_errno.EEXIST, "File exists", _fspath(file))
    if kind != "r":
        _fs_parent_ok(path)
        if not exists and len(_fs.files) >= _FS_MAX_FILES:
            raise OSError(_errno.ENOSPC, f"No space left on device (the working directory holds at most {_FS_MAX_FILES} files)", _fspath(file))
    data = b"" if kind in "wx" else _fs.files.get(path, b"")
    if kind in "wx":
        _fs.files[path] = b""
    readable, writable = kind == "r" or plus, kind != "r" or plus
    if binary:
        return _BinaryFile(path, mode, data, readable, writable, kind == "a")
    # "locale" is what io.text_encoding (pathlib) passes for the default; UTF-8 here.
    encoding = "utf-8" if encoding in (None, "locale") else encoding
    errors = errors or "strict"
    text = data.decode(encoding, errors)
    return _TextFile(path, mode, text, readable, writable, kind == "a", encoding, errors, newline)

class _StatResult(tuple):
    st_mode = property(lambda s: s[0])
    st_ino = property(lambda s: s[1])
    st_dev = property(lambda s: s[2])
    st_nlink = property(lambda s: s[3])
    st_uid = property(lambda s: s[4])
    st_gid = property(lambda s: s[5])
    st_size = property(lambda s: s[6])
    st_atime = property(lambda s: s[7])
    st_mtime = property(lambda s: s[8])
    st_ctime = property(lambda s: s[9])

def _stat_of(p, dir_fd=None, follow_symlinks=True):
    path = _fs_abs(p)
    _fs_sync()
    if path in _fs.dirs:
        return _StatResult((_stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0.0, 0.0, 0.0))
    if path in _fs.files:
        return _StatResult((_stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, len(_fs.files[path]), 0.0, 0.0, 0.0))
    raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(p))

def _listdir(p="."):
    path = _fs_abs(p)
    if path not in _fs.dirs:
        if path in _fs.files:
            raise NotADirectoryError(_errno.ENOTDIR, "Not a directory", _fspath(p))
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(p))
    names = [q for q in list(_fs.files) + list(_fs.dirs) if q != "/" and _pp.dirname(q) == path]
    return sorted(_pp.basename(q) for q in names)

class _DirEntry:
    def __init__(self, folder, name):
        self.name = name
        self.path = _pp.join(folder, name)
    def is_dir(self, follow_symlinks=True):
        return _fs_abs(self.path) in _fs.dirs
    def is_file(self, follow_symlinks=True):
        return _fs_abs(self.path) in _fs.files
    def is_symlink(self):
        return False
    def stat(self, follow_symlinks=True):
        return _stat_of(self.path)
    def __fspath__(self):
        return self.path

class _ScandirIterator:
    def __init__(self, entries):
        self._entries = iter(entries)
    def __iter__(self):
        return self
    def __next__(self):
        return next(self._entries)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def close(self):
        pass

def _scandir(p="."):
    folder = _fspath(p)
    return _ScandirIterator([_DirEntry(folder, name) for name in _listdir(p)])

def _remove(p, dir_fd=None):
    path = _fs_abs(p)
    _fs_sync()
    if path in _fs.dirs:
        raise IsADirectoryError(_errno.EISDIR, "Is a directory", _fspath(p))
    if path not in _fs.files:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(p))
    _fs_detach(path)
    del _fs.files[path]

def _mkdir(p, mode=0o777, dir_fd=None):
    path = _fs_abs(p)
    if path in _fs.dirs or path in _fs.files:
        raise FileExistsError(_errno.EEXIST, "File exists", _fspath(p))
    _fs_parent_ok(path)
    if len(_fs.dirs) >= _FS_MAX_FILES:
        raise OSError(_errno.ENOSPC, "No space left on device", _fspath(p))
    _fs.dirs.add(path)

def _rmdir(p, dir_fd=None):
    path = _fs_abs(p)
    if path not in _fs.dirs:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(p))
    if _listdir(path):
        raise OSError(_errno.ENOTEMPTY, "Directory not empty", _fspath(p))
    if path in ("/", _fs.cwd):
        raise OSError(_errno.EBUSY, "Device or resource busy", _fspath(p))
    _fs.dirs.discard(path)

def _rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    a, b = _fs_abs(src), _fs_abs(dst)
    _fs_sync()
    if a not in _fs.files:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(src))
    if b in _fs.dirs:
        raise IsADirectoryError(_errno.EISDIR, "Is a directory", _fspath(dst))
    _fs_parent_ok(b)
    _fs_detach(a)
    _fs_detach(b)
    _fs.files[b] = _fs.files.pop(a)

def _chdir(p):
    path = _fs_abs(p)
    if path not in _fs.dirs:
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", _fspath(p))
    _fs.cwd = path

def _access(p, mode, *, dir_fd=None, effective_ids=False, follow_symlinks=True):
    path = _fs_abs(p)
    return path in _fs.files or path in _fs.dirs

_builtins.open = _io.open = _open
_os.fspath = _fspath
_os.getcwd = lambda: _fs.cwd
_os.chdir = _chdir
_os.stat = _stat_of
_os.lstat = _stat_of
_os.listdir = _listdir
_os.scandir = _scandir
_os.remove = _os.unlink = _remove
_os.mkdir = _mkdir
_os.rmdir = _rmdir
_os.rename = _os.replace = _rename
_os.access = _access
