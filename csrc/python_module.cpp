// The Python module fastar._C: importing it runs the static TORCH_LIBRARY registrations.
// Built only for the Python package; C++ (libtorch) users link the library without it.
#ifdef WITH_PYTHON
#include <Python.h>

static struct PyModuleDef fastar_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&fastar_c_module);
}
#endif
