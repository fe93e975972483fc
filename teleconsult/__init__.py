"""Teleconsults (远程会诊): hospital working calendars in two time zones, specialists' consult
schedules, slots derived from them, safe booking, the video consult and the signed opinion."""
