"""gantryd's configuration: TOML file -> frozen dataclasses, validated as a whole.

The config object is immutable and passed to the services that need it (never global). A SIGHUP
builds a new one from the file; ``restart_required`` names what a running process cannot apply.

Layout (each module imports only those before it): ``schema`` (the dataclasses, and per key
whether a reload applies it), ``values`` (durations, sizes, addresses), ``_table`` (typed
getters naming the dotted key), ``docker_keys`` (the pool's Docker keys), ``pools`` (the
``[[pool]]`` tables and their budget), ``loader`` (one validator per other TOML table,
``load_config``), ``summary`` (``describe``).
Import from here: this is the package's public face.
"""

from agent.config.loader import load_config as load_config
from agent.config.loader import runtime_dir_of as runtime_dir_of
from agent.config.schema import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from agent.config.schema import EX_CONFIG as EX_CONFIG
from agent.config.schema import Config as Config
from agent.config.schema import ConfigError as ConfigError
from agent.config.schema import DockerMode as DockerMode
from agent.config.schema import GitHubConfig as GitHubConfig
from agent.config.schema import PoolConfig as PoolConfig
from agent.config.schema import PoolSource as PoolSource
from agent.config.schema import PriorityRule as PriorityRule
from agent.config.schema import PullPolicy as PullPolicy
from agent.config.schema import QueueConfig as QueueConfig
from agent.config.schema import Reload as Reload
from agent.config.schema import SchedulerConfig as SchedulerConfig
from agent.config.schema import Scope as Scope
from agent.config.schema import SecurityProfile as SecurityProfile
from agent.config.schema import ServerConfig as ServerConfig
from agent.config.schema import reload_schema as reload_schema
from agent.config.schema import restart_required as restart_required
from agent.config.summary import describe as describe
from agent.config.values import format_duration as format_duration
from agent.config.values import format_size as format_size
from agent.config.values import parse_duration as parse_duration
from agent.config.values import parse_listen as parse_listen
from agent.config.values import parse_size as parse_size
