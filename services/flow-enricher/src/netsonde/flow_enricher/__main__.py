from netsonde.common.service import main_for

from .config import FlowEnricherConfig
from .service import FlowEnricherService

main_for(FlowEnricherService, FlowEnricherConfig)
