"""Our Baichuan2 code (`Baichuan2-7B/`) imported as the package `baichuan2_7b`, its classes registered with the
Auto classes."""

import importlib.util
import sys

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from tuning.runtime.paths import REPO_ROOT

CODE_DIR = REPO_ROOT / "Baichuan2-7B"
CODE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
PACKAGE_NAME = "baichuan2_7b"


def _import_code_package():
    """Import the hyphenated `Baichuan2-7B/` folder as the package `baichuan2_7b`."""
    if PACKAGE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE_NAME, CODE_DIR / "__init__.py", submodule_search_locations=[str(CODE_DIR)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE_NAME] = package
        spec.loader.exec_module(package)
    return sys.modules[PACKAGE_NAME]


_package = _import_code_package()
BaichuanConfig = _package.BaichuanConfig
BaichuanForCausalLM = _package.BaichuanForCausalLM
BaichuanModel = _package.BaichuanModel
BaichuanRMSNorm = _package.modeling_baichuan.BaichuanRMSNorm
BaichuanTokenizer = _package.BaichuanTokenizer

AutoConfig.register(BaichuanConfig.model_type, BaichuanConfig, exist_ok=True)
AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
AutoTokenizer.register(BaichuanConfig, slow_tokenizer_class=BaichuanTokenizer, exist_ok=True)
# save_pretrained then copies our code beside the weights and writes the official auto_map.
BaichuanConfig.register_for_auto_class()
BaichuanForCausalLM.register_for_auto_class("AutoModelForCausalLM")
