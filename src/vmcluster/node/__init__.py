"""What a real host runs: ``vmclusterd`` (:mod:`.daemon`), its configuration
(:mod:`.config`) and its watchdog (:mod:`.watchdog`)."""
