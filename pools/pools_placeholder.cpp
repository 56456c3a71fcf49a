// replaced by the pools implementation
