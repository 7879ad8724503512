// Every page's watch and lifecycle hooks (build_flows.py puts them into each page's options).
watch: {
    msg() {
        this.onModel();
    }
},
mounted() {
    this.operator = this.storedOperator();
    if (!this.operator) this.askingName = true;
    this.tick();
    this.ticker = setInterval(this.tick, 1000);
    this.onModel();
},
unmounted() {
    clearInterval(this.ticker);
},
