"""The loop that keeps a town's role models current: convention fingerprints taken at training
time (`fingerprint`), the staleness check of deployed models (`stale`), and the retrain request
it makes (`retrain`)."""
