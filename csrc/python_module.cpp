// The Python module fastar._C: importing it runs the static TORCH_LIBRARY registrations. It
// also reads and sets the CPU kernels' level (fastar.ops.force_cpu_capability sets it and
// keeps a Python copy that torch.compile can guard on).
// Built only for the Python package; C++ (libtorch) users link the library without it and
// call fastar::cpu::set_capability (csrc/cpu/isa.h).
#ifdef WITH_PYTHON
#include <Python.h>

#include <c10/util/Exception.h>

#include "cpu/isa.h"
#include "cpu/pixel_loop.h"

namespace {

using fastar::cpu::Capability;

// () -> (in use, best this CPU runs): names as FASTAR_CPU_CAPABILITY spells them.
PyObject* cpu_capability(PyObject*, PyObject*) {
  return Py_BuildValue("(ss)", fastar::cpu::capability_name(fastar::cpu::capability()),
                       fastar::cpu::capability_name(fastar::cpu::best_capability()));
}

// (name) -> None: the level the CPU kernels use from their next call on.
PyObject* set_cpu_capability(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  Capability c;
  if (!fastar::cpu::parse_capability(name, &c)) {
    PyErr_Format(PyExc_ValueError,
                 "fastar: unknown CPU capability '%s' (expected default, avx2 or avx512)", name);
    return nullptr;
  }
  try {
    fastar::cpu::set_capability(c);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// (on) -> previous: whether the image samplers' CPU kernels run the CUDA kernels' team bodies
// (cpu/pixel_loop.h, run_device_bodies); for the tests.
PyObject* set_run_device_bodies(PyObject*, PyObject* args) {
  int on = 0;
  if (!PyArg_ParseTuple(args, "p", &on)) return nullptr;
  return PyBool_FromLong(fastar::cpu::pixel_loop::run_device_bodies().exchange(on != 0));
}

PyMethodDef methods[] = {
    {"_cpu_capability", cpu_capability, METH_NOARGS,
     "(level in use, best level this CPU runs) of the CPU kernels"},
    {"_set_cpu_capability", set_cpu_capability, METH_VARARGS,
     "sets the level of the CPU kernels: default, avx2 or avx512"},
    {"_set_run_device_bodies", set_run_device_bodies, METH_VARARGS,
     "whether the image samplers' CPU kernels run the CUDA kernels' bodies; returns the last"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef fastar_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&fastar_c_module);
}
#endif
