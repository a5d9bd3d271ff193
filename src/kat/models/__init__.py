"""KAT models; importing this package registers them with timm."""
from .from_vit import from_vit, load_state_dict_file
from .kat import KAT, checkpoint_filter_fn, mimetic_init_, unwrap_state_dict

__all__ = ["KAT", "from_vit", "load_state_dict_file", "checkpoint_filter_fn", "mimetic_init_",
           "unwrap_state_dict"]
