from netsonde.common.service import main_for

from .config import ProbeFlowConfig
from .service import ProbeFlowService

main_for(ProbeFlowService, ProbeFlowConfig)
