/* fastipc aio.c: the one helper thread of fastipc._aio waits here on many futex words at
 * once (futex_waitv, Linux 5.16+), with the GIL released (cffi releases it for every call).
 * The part between the CDEF markers is part of the cffi cdef. */
#ifndef FASTIPC_AIO_H
#define FASTIPC_AIO_H

#include "fastipc.h"

/* CDEF BEGIN */
/* Wait until one of the n words of vec (struct futex_waitv[n], filled by Python) is woken
 * or no longer holds its value, at most timeout seconds (< 0: no limit). Returns the index
 * of the word woken, or -EAGAIN (a word had changed already), -ETIMEDOUT, -EINTR, -ENOSYS
 * (a kernel before 5.16), -errno. */
int64_t fipc_aio_waitv(void *vec, uint32_t n, double timeout);
/* CDEF END */

#endif
