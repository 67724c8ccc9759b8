from netsonde.common.service import main_for

from .config import QueryApiConfig
from .service import QueryApiService

main_for(QueryApiService, QueryApiConfig)
