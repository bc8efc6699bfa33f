from cctrain_enclave.cli import main

main()
