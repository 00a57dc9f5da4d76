"""``python -m cloudtaser.wrapper -- COMMAND ARGS...``"""

from cloudtaser.wrapper.launching import main

main()
