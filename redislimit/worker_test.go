package redislimit

func runWorker() bool { return false }
