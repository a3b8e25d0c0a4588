"""Task synthetic: long-memory problems generated in memory from a seed (adding, copy memory,
noisy sine), each with a memoryless baseline."""
