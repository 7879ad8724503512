"""CAEN HV/LV power supplies: status bits, backends (EPICS, HV Wrapper), channel FSM, service."""
