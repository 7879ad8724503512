// Every page's watch and mounted hooks (build_flows.py puts them into each page's options).
watch: {
    msg() {
        this.onModel();
    }
},
mounted() {
    this.onModel();
},
