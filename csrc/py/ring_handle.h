/* fastipc csrc/py/ring_handle.h: what the native handles of the two shared-memory rings
 * (csrc/py/shm.c: the channel's Writer and Reader; csrc/py/pubsub.c: the fan-out's
 * Publisher and Subscriber) write alike. Internal: macros and static inline functions, so
 * that each file's hot paths stay as they were. */
#ifndef FASTIPC_PY_RING_HANDLE_H
#define FASTIPC_PY_RING_HANDLE_H

#include "handle.h"

/* One handle type of a ring: its slots (the variadic arguments: Py_tp_doc, Py_tp_methods...)
 * and its spec, static, named var##_slots and var##_spec; `type` is the C struct of its
 * instances (the handle's, which starts with fipc_handle). */
#define FIPC_RING_HANDLE_TYPE(var, qualname, type, ...)                                      \
    static PyType_Slot var##_slots[] = {__VA_ARGS__, {0, NULL}};                            \
    static PyType_Spec var##_spec = {                                                       \
        .name = qualname,                                                                   \
        .basicsize = sizeof(type),                                                          \
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                                  \
        .slots = var##_slots,                                                               \
    }

/* Add a ring's two handle types (its writer's and its reader's) to the module: 0, or -1. */
static inline int fipc_ring_add_types(PyObject *module, PyType_Spec *writer,
                                      PyType_Spec *reader)
{
    if (fipc_h_add_type(module, writer, NULL) < 0)
        return -1;
    return fipc_h_add_type(module, reader, NULL);
}

#endif
