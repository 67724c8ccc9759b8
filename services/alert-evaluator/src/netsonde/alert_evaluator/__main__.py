from netsonde.common.service import main_for

from .config import AlertEvaluatorConfig
from .service import AlertEvaluatorService

main_for(AlertEvaluatorService, AlertEvaluatorConfig)
