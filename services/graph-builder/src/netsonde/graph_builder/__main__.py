from netsonde.common.service import main_for

from .config import GraphBuilderConfig
from .service import GraphBuilderService

main_for(GraphBuilderService, GraphBuilderConfig)
