"""modules/shared.py (+ the Shared module class of shared_items.py): cmd_opts, opts, state, the
`parallel_processing_allowed` flag, OptionInfo/options_section, and `sd_model` as a property that LOADS the
model on first access, as the real one does (through sd_models.model_data.get_sd_model())."""

import sys

from modules import options, shared_cmd_options, shared_state
from modules.paths_internal import data_path, models_path, script_path  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

parallel_processing_allowed = True
device = None

OptionInfo = options.OptionInfo
options_section = options.options_section

# A few of the WebUI's own settings (modules/shared_options.py) that code near training reads.
options_templates = {
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "live_previews_image_format": OptionInfo("png", "Live preview file format"),
    "unload_models_when_training": OptionInfo(False, "Move VAE and CLIP to RAM when training if possible"),
    "sd_checkpoint_cache": OptionInfo(0, "Checkpoints to cache in RAM"),
}
opts = options.Options(options_templates)
state = shared_state.State()


class Shared(sys.modules[__name__].__class__):
    @property
    def sd_model(self):
        import modules.sd_models

        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models

        modules.sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
