from netsonde.common.service import main_for

from .config import FlowEnricherConfig
from .service import FlowEnricherService, tune_process

tune_process()
main_for(FlowEnricherService, FlowEnricherConfig)
