"""``python -m tests.llama_server ARGS``: llama-cpp-python's server (``llama_cpp.server``), unchanged,
with llama.cpp's extra weight buffers (AMX tiles, repacking) turned off.

On the CI machines the CPU reports AMX but the virtual machine does not let a process use its tile
registers: llama.cpp's AMX kernels then die of a general protection fault on the first request
(``ldtilecfg`` in libggml-cpu). llama-server has ``--no-repack`` for this; llama-cpp-python's server
does not expose the setting, so it is set here in the model parameters the server asks for.
"""

import runpy

import llama_cpp.llama_cpp as low_level

_defaults = low_level.llama_model_default_params


def _without_extra_buffers():
    params = _defaults()
    params.use_extra_bufts = False
    return params


low_level.llama_model_default_params = _without_extra_buffers
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
