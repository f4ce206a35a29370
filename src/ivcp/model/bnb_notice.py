"""Keep bitsandbytes' notice about an optional CPU kernel out of IVCP's output, and nothing else it logs.

On a CPU with AVX512-BF16, importing bitsandbytes (PEFT does, to look for 4-bit layers, in every LoRA run) tries the
Hub kernel ``kernels-community/quantization-bitsandbytes`` through the optional ``kernels`` package and, when that
package is not installed, logs "Failed to load CPU gemm_4bit_forward ... No module named 'kernels'" and uses its own
CPU code. Only that case is dropped: a failure of an installed ``kernels`` package is still shown.
"""

import logging


BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _not_the_missing_optional_kernels_package(record: logging.LogRecord) -> bool:
    cause = record.args[0] if isinstance(record.args, tuple) and record.args else None
    missing_kernels = isinstance(cause, ModuleNotFoundError) and cause.name == "kernels"
    return not (missing_kernels and record.getMessage().startswith("Failed to load CPU gemm_4bit_forward"))


def quiet_optional_cpu_kernel_notice() -> None:
    r"""Install the filter once (it is looked up by name: bitsandbytes need not be imported yet)."""
    bnb_logger = logging.getLogger(BNB_CPU_LOGGER)
    if _not_the_missing_optional_kernels_package not in bnb_logger.filters:
        bnb_logger.addFilter(_not_the_missing_optional_kernels_package)
