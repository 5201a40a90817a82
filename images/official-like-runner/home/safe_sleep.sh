#!/bin/bash
# As upstream's src/Misc/layoutroot/safe_sleep.sh: sleep N seconds (the image has coreutils).
sleep "$1"
