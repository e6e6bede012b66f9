# Types of the cffi extension module built from csrc/ by src/fastipc/_build.py. Its
# functions are declared in C (csrc/fastipc.h); Python reaches them through `lib`, whose
# attributes cffi creates at import time, so they are typed as Any here.
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
