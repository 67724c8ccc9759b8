from netsonde.common.service import main_for

from .config import SFlowCollectorConfig
from .service import SFlowCollectorService

main_for(SFlowCollectorService, SFlowCollectorConfig)
