"""Reading a pickle that a user points at without letting it run code.

``pickle.load`` calls whatever callables the file names (``os.system``, ``subprocess.Popen``, ...), so a
pickle from elsewhere is a program, not data. Data sets still ship as pickles (the CIFAR python
version), so :func:`load_pickle` reads them with a :class:`RestrictedUnpickler`: the pickle's own
opcodes build Python's containers and scalars (dict, list, tuple, str, bytes, int, float, bool,
None) as usual, and every *global* it asks for (the one way a pickle reaches code) must be in an
allow-list, by default the few numpy functions that rebuild an array (:data:`NUMPY_ARRAYS`);
anything else is refused with one :class:`LitzooError` line naming the file and the global, before
it is imported or called.

The numpy globals are safe to allow: ``_reconstruct`` / ``_frombuffer`` / ``scalar`` only build an
``ndarray`` / numpy scalar of the class the pickle names, and the only class it can name is
``numpy.ndarray`` itself; ``codecs.encode`` turns text into bytes (Python 3 pickles of protocol < 3
store ``bytes`` that way). Persistent ids are refused by :class:`pickle.Unpickler` itself.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litzoo.framework.errors import LitzooError

# numpy's array-rebuilding functions, taken from numpy's own pickling (`__reduce__`), so that neither
# `numpy.core` (deprecated in numpy 2) nor `numpy._core` (private) has to be imported by name.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]

#: The globals a pickle of numpy arrays needs, as ``(module, name) -> object``. Pickles written by
#: numpy 1 name ``numpy.core.*``, by numpy 2 ``numpy._core.*``; both map to the same functions.
NUMPY_ARRAYS: Mapping[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (``module.name`` in ``args[0]``)."""


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves globals from ``allowed`` only and refuses the rest.

    Args:
        file: a binary file object positioned at the pickle.
        allowed: ``(module, name) -> object`` for every global the pickle may use; names are
            compared as written in the file (Python 2 module names are not translated first).
        encoding: how Python 2 ``str`` objects are decoded (``"latin1"`` keeps numpy's raw array
            bytes intact and turns the keys into ``str``; ``"bytes"`` keeps them ``bytes``).

    Raises:
        RefusedGlobal: from :meth:`load`, for a global that is not allowed; nothing was imported.
    """

    def __init__(self, file: Any, allowed: Mapping[tuple[str, str], Any] = NUMPY_ARRAYS, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = dict(allowed)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def load_pickle(path: str | Path, allowed: Mapping[tuple[str, str], Any] = NUMPY_ARRAYS, encoding: str = "latin1") -> Any:
    """The object pickled in ``path``, read with :class:`RestrictedUnpickler` (builtin containers and
    numpy arrays only, by default).

    Raises:
        LitzooError: one line naming the file: it cannot be opened; it asks for a global outside
            ``allowed`` (refused before anything is imported or called); it is not a pickle, is
            truncated or is otherwise corrupt.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            return RestrictedUnpickler(file, allowed, encoding).load()
    except RefusedGlobal as err:
        raise LitzooError(f"refusing to unpickle '{path}': it asks for '{err.args[0]}', and only Python containers and numpy arrays may be "
                          "loaded from a pickle (anything else could run code)") from None  # fmt: skip
    except OSError as err:
        raise LitzooError(f"cannot read '{path}': {err.strerror or err}") from err
    except Exception as err:  # a corrupt pickle fails with many types (UnpicklingError, EOFError, ValueError, TypeError, ...)
        reason = " ".join(str(err).split()) or type(err).__name__
        raise LitzooError(f"cannot read '{path}': not a valid pickle ({reason})") from err
