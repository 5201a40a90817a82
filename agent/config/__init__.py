"""gantryd's configuration (being split into modules; this is its public face)."""

from agent.config.loader import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from agent.config.loader import EX_CONFIG as EX_CONFIG
from agent.config.loader import Config as Config
from agent.config.loader import ConfigError as ConfigError
from agent.config.loader import GitHubConfig as GitHubConfig
from agent.config.loader import PoolConfig as PoolConfig
from agent.config.loader import PriorityRule as PriorityRule
from agent.config.loader import PullPolicy as PullPolicy
from agent.config.loader import QueueConfig as QueueConfig
from agent.config.loader import SchedulerConfig as SchedulerConfig
from agent.config.loader import Scope as Scope
from agent.config.loader import SecurityProfile as SecurityProfile
from agent.config.loader import ServerConfig as ServerConfig
from agent.config.loader import describe as describe
from agent.config.loader import format_duration as format_duration
from agent.config.loader import format_size as format_size
from agent.config.loader import load_config as load_config
from agent.config.loader import parse_duration as parse_duration
from agent.config.loader import parse_listen as parse_listen
from agent.config.loader import parse_size as parse_size
from agent.config.loader import restart_required as restart_required
