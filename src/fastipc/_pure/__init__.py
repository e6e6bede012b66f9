"""Backend operations in pure Python (os, mmap, selectors, posix_ipc, ctypes)."""
