from netsonde.common.service import main_for

from .config import FlowEnricherConfig
from .service import FlowEnricherService, tune_malloc

tune_malloc()
main_for(FlowEnricherService, FlowEnricherConfig)
