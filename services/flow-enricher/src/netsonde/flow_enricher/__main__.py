from netsonde.common.service import main_for

from .config import FlowEnricherConfig
from .service import FlowEnricherService, exec_with_hugepage_malloc, tune_process

exec_with_hugepage_malloc()
tune_process()
main_for(FlowEnricherService, FlowEnricherConfig)
